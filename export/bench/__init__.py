"""``edgeseg bench``: latency, memory and FLOPs of components and pipelines across backends.

- :mod:`.results`: the result document (rows, statistics, ratios), JSON in and out.
- :mod:`.components`: one component across backends and batch sizes (``CASES``).
- :mod:`.pipelines`: ``set_image`` + ``predict`` per stage; the text cache; the runtime's import cost.
- :mod:`.memory`, :mod:`.flops`: peak memory in a subprocess, FLOPs from the ONNX graph.
- :mod:`.report`: markdown tables and plots.
"""
