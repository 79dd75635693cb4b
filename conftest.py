"""Project-wide pytest setup: everything runs with the model hubs switched off.

Kernels started by nbval inherit this environment, so notebooks run offline too.
"""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
