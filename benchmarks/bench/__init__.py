"""gptpipe's benchmarks, one module per section; benchmarks/run.py runs them."""
