"""Each lesson's exercise checks: reference implementations and the inputs they are tried on.

One module per lesson (``l00_start_here``, ...). The mechanism itself is ``rlhf_helpers.exercises``.
"""
