"""Served trials: a running OpenAI-compatible server measured under a stream of requests (issue 34).

`loadgen` drives the server with vLLM's load generator and returns each request's timings as a
`result.LoadResult`; `slo` turns those into goodput and latency percentiles under TTFT/TPOT/E2EL
limits.
Importing this package imports neither vLLM nor the generator.
"""
