"""Benchmarks and load tests (`cascade bench`); nothing in the product imports this package."""
