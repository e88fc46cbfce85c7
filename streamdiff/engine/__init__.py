"""The engine: a pair's plan (`plans`), a lazy stream of tasks from it (`tasks`), the work of one
task (`work`, over `sides`), and two executors the driver (api.py) chooses between: local threads
(`threads`) and Dask workers (`dask`, connected through `cluster`)."""
