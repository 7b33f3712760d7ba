"""Chapter 2 -- 3D Gaussian splatting (Kerbl et al. 2023) from scratch.

* :mod:`npga.splatting.gaussians` -- the Gaussian parameter dict, activations, SH, 3DGS PLY.
* :mod:`npga.splatting.render` -- :func:`rasterize`, the one entry point (gsplat's
  signature), and the backend choice; :mod:`npga.splatting.render_torch` is the readable
  pure-PyTorch backend.
* :mod:`npga.splatting.densify` -- adaptive density control (clone, split, prune, reset).
* :mod:`npga.splatting.static_fit` -- fitting one multi-view frame.
"""
