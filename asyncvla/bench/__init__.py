"""Throughput benchmark (issue 4): emulated workloads on virtual devices, the RL-VLA^3 ablation
modes on the real runtime, the pipeline bound and utilization.

* ``emulated.EmulatedPolicy``: a policy whose compute is a duration on a named virtual device
  (plug-in name ``asyncvla.bench.emulated:EmulatedPolicy``);
* ``vdevice``: cross-process device locks and their hold logs;
* ``profiles``: profile YAML (``configs/bench``), the modes, the nominal pipeline bound;
* ``analysis``: throughput, busy fractions, measured stage costs and bound of one run;
* ``bench.run_bench``: the benchmark as a library function.

Imports are kept light here: Ray workers import ``asyncvla.bench.emulated`` by name.
"""
