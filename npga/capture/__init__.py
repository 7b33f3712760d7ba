"""Chapter 1 -- the capture: cameras, the processed multi-view layout and its loader.

* :mod:`npga.capture.cameras` -- :class:`Camera` (OpenCV convention), the NeRSemble rig,
  the one reader and writer of ``camera_params.json``.
* :mod:`npga.capture.dataset` -- :func:`open_dataset`: validating loader of the processed
  layout (real NeRSemble or synthetic), tracked codes, ground truth.
* :mod:`npga.capture.synthetic` -- SynthHead, the procedural capture the book generates.
"""
