"""Check a multi-process launch before a long run: every process reports, and they add up numbers.

    accelerate launch --config_file scale/accelerate/cpu_gloo.yaml scale/accelerate/hello_ranks.py
    accelerate launch --config_file scale/accelerate/ddp.yaml scale/accelerate/hello_ranks.py

Process ``i`` of ``N`` contributes ``i + 1`` to an all-reduce (a sum over every process), so each
must print ``1 + 2 + ... + N = N(N+1)/2``. A wrong sum, a hang, or ``of 1`` means the launch is
not what the config says.
"""

import torch
import torch.distributed as dist
from accelerate import PartialState

state = PartialState(cpu=not torch.cuda.is_available())  # CPU: gloo; CUDA: nccl
value = torch.tensor([state.process_index + 1.0], device=state.device)
if state.num_processes > 1:
    dist.all_reduce(value)
print(f"process {state.process_index} of {state.num_processes}: backend {state.backend}, device {state.device}, "
      f"sum {value.item():g}", flush=True)
state.destroy_process_group()  # close gloo/nccl before exit: left open, a process can abort while exiting
