"""Chapters 5-8 -- the NPGA avatar (NPGA Sec. 4) and the loops that train and measure it.

* :mod:`npga.avatar.model` -- :class:`NPGAvatar`: canonical Gaussians, per-Gaussian
  features, the forward field F and the detail network G.
* :mod:`npga.avatar.dynamics` -- the detail network G(x_c, f_i, z_exp).
* :mod:`npga.avatar.regularizers` -- k-NN graph and Laplacian terms (chapter 6).
* :mod:`npga.avatar.densify_dynamic` -- density control across frames and cameras (chapter 7).
* :mod:`npga.avatar.cnn` -- the screen-space CNN (chapter 8).
* :mod:`npga.avatar.train` -- the training loop; :mod:`npga.avatar.evaluate` -- novel
  views, self- and cross-reenactment.
"""
