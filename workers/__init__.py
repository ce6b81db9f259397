"""Stage workers (the torch side): the worker process, the stage job it runs, cross-request
batching and the one-machine service (`cascade serve`); job control they use lives in `jobs`."""
