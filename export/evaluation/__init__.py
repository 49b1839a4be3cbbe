"""ToyWorld evaluations through the runtime predictors (torch only for ``--compare-torch``).

- :mod:`.segmentation`: ``edgeseg eval lseg|tcl|ifseg`` (mIoU per split).
- :mod:`.refdiff`: ``edgeseg eval refdiff`` (oIoU / mIoU on the referring split).
- :mod:`.torch_references`: PyTorch label-map references for ``--compare-torch``.
"""
