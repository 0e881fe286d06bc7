"""The one helper package of the benchmarks in bench/: what several scripts share, built on public API only.

``python bench/<script>.py`` puts bench/ first on ``sys.path``, so a script imports these as ``benchkit.<module>``
with no path set-up. Small modules with one job each:

* ``server``: a real ``tokentrace serve`` subprocess, the machine's description, percentiles, RESULTS.md;
* ``spans``: the synthetic spans every distributed benchmark produces (``make_spans``);
* ``topics``: topics on a ``tokentrace.devcluster`` broker, producing spans as every producer partitions them,
  and reading a topic back;
* ``workers``: ``tokentrace worker`` processes of one deployment, the view's span count, one measured run;
* ``procfs``: CPU seconds of a process and of the machine, peak RSS, the CPU model, the load, the commit;
* ``quota``: a cgroup CPU quota for one process (a container's CPU limit);
* ``variants``: the source tree of a git revision as an import path, for ``--against`` A/B runs;
* ``state``: a big embedded state (30 days of per-bucket aggregates) built fast, and its snapshot on disk;
* ``chromium``: Debian's headless chromium under Playwright, launched as the console tests launch it.

Kafka and Redis come from ``tokentrace.devcluster`` (what ``tokentrace dev-cluster`` runs); nothing here
imports the test suite or a name the product keeps private.
"""
