"""Experiments that measure NPGA's ideas: the ablation runner, its variants, the paired
statistics and the claims table that chapters 5-8 show (:mod:`npga.experiments.ablation`;
command line: ``benchmarks/ablation.py``)."""
