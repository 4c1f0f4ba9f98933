"""tunewise: fine-tune only when it pays, and prove it.

Importing tunewise changes nothing process-wide: evaluation, training and serving tune the process when
they start (`tunewise.runtime.tune_process`).
"""

__version__ = "0.1.0"
