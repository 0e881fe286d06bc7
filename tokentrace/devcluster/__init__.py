"""A whole distributed deployment on one machine, for trying it and for tests: ``tokentrace dev-cluster``.

Small modules with one job each: ``procs`` (child processes in their own process groups, free ports,
polling), ``kafka`` (the broker jars fetched with Maven into a cache, single-node or multi-node KRaft
brokers), ``redis`` (a ``redis-server``), ``supervisor`` (start in tiers, watch, stop everything on a signal),
``cluster`` (what to start, on which ports, in which order) and ``command`` (the CLI command).
tests/infra builds its fixtures on the same classes.
"""
