"""Server knobs: settings of an engine's server that a served trial searches over, beside the
batch size (which every engine's server has: vLLM's --max-num-seqs, llama-server's slots,
`autoinfer serve`'s batch cap).

Each knob applies to one engine's server only and is sampled only for its points. A point carries
its knobs as one canonical text (`TrialPoint.server_knobs`, "max_num_batched_tokens=512,prefix_caching=on"),
so that points, identities and the grid stay plain values; the engine's export recipe turns them
into its server's flags. Pure data: nothing here imports an engine or a server.
"""

from __future__ import annotations

from typing import Any

# Per engine: knob -> (type, what it sets). Integer knobs are token counts.
KNOBS: dict[str, dict[str, tuple[type, str]]] = {
    "vllm": {
        # On in vLLM's own defaults and most deployments; off in plain exports (so a trial's
        # measurement is the same whatever requests came before).
        "prefix_caching": (bool, "--enable-prefix-caching / --no-enable-prefix-caching"),
        # Tokens one scheduler step may hold (prefill chunks and decodes together): smaller keeps
        # decodes flowing while long prompts prefill (TPOT), larger prefills faster (TTFT).
        "max_num_batched_tokens": (int, "--max-num-batched-tokens (chunked prefill on where below the context)"),
    },
    "llama.cpp": {
        "batch": (int, "-b: logical batch, tokens one llama_decode call may take"),
        "ubatch": (int, "-ub: physical batch, tokens evaluated per pass (at most batch)"),
    },
}
MAX_TOKENS = 1 << 20


def check(engine: str, knob: str, values: list[Any]) -> str | None:
    """Why `values` is not a valid list for `knob` of `engine`'s server, or None."""
    from autoinfer.registry import did_you_mean

    if engine not in KNOBS:
        return f"no server knobs for engine {engine!r} (knobs exist for {', '.join(KNOBS)})"
    if knob not in KNOBS[engine]:
        return f"{engine}: " + did_you_mean(knob, list(KNOBS[engine]))
    kind = KNOBS[engine][knob][0]
    if not values:
        return f"{engine}.{knob}: an empty list"
    if len({repr(v) for v in values}) != len(values):
        return f"{engine}.{knob}: lists a value twice"
    for v in values:
        if kind is bool and not isinstance(v, bool):
            return f"{engine}.{knob}: {v!r} is not true or false"
        if kind is int and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS):
            return f"{engine}.{knob}: {v!r} is not a token count in 1..{MAX_TOKENS}"
    return None


def encode(knobs: dict[str, Any]) -> str:
    """The canonical text of a point's knobs (sorted by name; booleans as on/off)."""
    return ",".join(f"{k}={('on' if v else 'off') if isinstance(v, bool) else v}" for k, v in sorted(knobs.items()))


def decode(engine: str, text: str) -> dict[str, Any]:
    """The knobs of a point's text, typed as KNOBS says; ValueError for one this engine lacks."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        kind = KNOBS.get(engine, {}).get(name, (None, ""))[0]
        if kind is None:
            raise ValueError(f"{engine} has no server knob {name!r}")
        out[name] = value == "on" if kind is bool else int(value)
    return out
