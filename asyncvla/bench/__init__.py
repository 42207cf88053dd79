"""Throughput benchmark: emulated workloads on virtual devices, the RL-VLA^3 ablation modes on the
real runtime, the pipeline bound and utilization, and the placement planner.

* ``emulated.EmulatedPolicy``: a policy whose compute is a duration on a named virtual device
  (plug-in name ``asyncvla.bench.emulated:EmulatedPolicy``);
* ``vdevice``: cross-process device locks and their hold logs;
* ``profiles``: profile YAML (``configs/bench``), the modes, the nominal pipeline bound;
* ``analysis``: throughput, busy fractions, measured stage costs and bound of one run;
* ``memory``: peak resident memory of a run's process tree;
* ``bench.run_bench``: the benchmark as a library function (``asyncvla bench``);
* ``tune.tune_profile``: ``asyncvla bench --tune`` (the auto-tune itself is
  ``asyncvla.runtime.autotune``);
* ``simulate`` and ``planner``: the discrete-event model of the runtime and ``asyncvla plan``.

The stage-cost model every part uses is ``asyncvla.runtime.costs.CostModel``. Imports are kept
light here: Ray workers import ``asyncvla.bench.emulated`` by name.
"""
