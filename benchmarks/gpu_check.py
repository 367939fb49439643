"""`make gpu-check`: the device, bf16, tokens/s, MFU, val loss and determinism of
the lecture's 6x6x384 GPT (benchmarks/gpu_lecture.yaml) on this machine's GPU;
one line and exit 0 without one. The logic is gptpipe.gpu_check (tested on CPU:
`python benchmarks/gpu_check.py --device cpu --steps 3 --tiny`)."""
from pathlib import Path

from gptpipe.errors import run_main
from gptpipe.gpu_check import PROG, main

if __name__ == "__main__":
    run_main(lambda: main(default_preset=Path(__file__).resolve().parent / "gpu_lecture.yaml"),
             PROG)
