"""Stage workers, job records, queues and the result store (torch only in the stage runtime)."""
