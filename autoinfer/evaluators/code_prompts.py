"""`builtin:code`: code-completion and code-editing requests of the length a coding assistant sees.

Half ask to complete code that is cut off, half to change code that is given whole (fix, refactor,
annotate, translate, test). Editing requests repeat much of their input in the answer, which is
where prompt lookup and draft models are accepted most; completions are where they are accepted
least. Several languages, 10-40 lines each.
"""

from __future__ import annotations

BUILTIN_CODE = [
    # --- completion
    '''Complete the body of this Python function. Reply with the whole function only.

```python
def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals.

    >>> merge_intervals([(1, 3), (2, 6), (8, 10), (15, 18)])
    [(1, 6), (8, 10), (15, 18)]
    >>> merge_intervals([(1, 4), (4, 5)])
    [(1, 5)]
    """
```''',
    """Finish this TypeScript React hook so that it debounces `value` by `delayMs` milliseconds.

```tsx
import { useEffect, useState } from "react";

export function useDebounced<T>(value: T, delayMs: number): T {
  const [debounced, setDebounced] = useState<T>(value);
```""",
    """Complete the SQL query: for each customer, the total of their orders in 2024 and the date of
their latest order, customers without orders included with a total of 0.

```sql
-- customers(id, name, country)
-- orders(id, customer_id, placed_at timestamp, amount numeric)
SELECT c.id,
       c.name,
```""",
    """Complete this Rust function that parses lines like "key = value" into a map, skipping blank
lines and lines starting with '#', and returning an error naming the line number of a bad line.

```rust
use std::collections::HashMap;

#[derive(Debug)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

pub fn parse_config(text: &str) -> Result<HashMap<String, String>, ParseError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
```""",
    """Write the missing method `evict_if_needed` of this LRU cache.

```python
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, bytes] = OrderedDict()
        self.size = 0  # total bytes of the values held

    def get(self, key: str) -> bytes | None:
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key]

    def put(self, key: str, value: bytes) -> None:
        if key in self.items:
            self.size -= len(self.items.pop(key))
        self.items[key] = value
        self.size += len(value)
        self.evict_if_needed()
```""",
    """Complete this Go HTTP handler: it should decode a JSON body {"name": string, "age": int},
reply 400 with a message when the body is invalid or name is empty, and otherwise reply 201
with the stored user as JSON.

```go
type User struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
	Age  int    `json:"age"`
}

type Store interface {
	Add(u User) (User, error)
}

func CreateUser(store Store) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
```""",
    """Continue this bash script so that it backs up every *.conf file under /etc/myapp into a dated
tar.gz in $BACKUP_DIR, keeps only the 7 newest archives, and exits non-zero on any error.

```bash
#!/usr/bin/env bash
set -euo pipefail
BACKUP_DIR=${BACKUP_DIR:-/var/backups/myapp}
mkdir -p "$BACKUP_DIR"
stamp=$(date +%Y-%m-%d)
```""",
    '''Implement `moving_average` with numpy, without a Python loop, and keep the docstring.

```python
import numpy as np


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` samples; the first window-1 outputs are NaN.

    >>> moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    array([nan, 1.5, 2.5, 3.5])
    """
```''',
    # --- editing
    """Fix the bug in this function and return the corrected code only. It should return the
index of `target` in the sorted list `xs`, or -1.

```python
def binary_search(xs: list[int], target: int) -> int:
    lo, hi = 0, len(xs)
    while lo < hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid
        else:
            hi = mid
    return -1
```""",
    """Add type hints to every function below and change nothing else.

```python
import json
from pathlib import Path


def load_users(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def adults(users, min_age=18):
    return [u for u in users if u.get("age", 0) >= min_age]


def names_by_country(users):
    out = {}
    for u in users:
        out.setdefault(u["country"], []).append(u["name"])
    return out


def save(users, path):
    Path(path).write_text("\\n".join(json.dumps(u) for u in users))
```""",
    """Refactor this JavaScript to use async/await instead of promise chains; keep the behaviour,
including the error message.

```javascript
function loadProfile(userId) {
  return fetch(`/api/users/${userId}`)
    .then((res) => {
      if (!res.ok) {
        throw new Error(`user ${userId}: HTTP ${res.status}`);
      }
      return res.json();
    })
    .then((user) =>
      fetch(`/api/teams/${user.teamId}`)
        .then((res) => res.json())
        .then((team) => ({ ...user, team }))
    )
    .catch((err) => {
      console.error(err);
      return null;
    });
}
```""",
    """Rename the variable `d` to `deadline` and `t` to `task` everywhere in this code, and
return the whole code.

```python
import heapq
import time


def run_due(queue, now=None):
    now = time.monotonic() if now is None else now
    done = []
    while queue and queue[0][0] <= now:
        d, t = heapq.heappop(queue)
        try:
            t.run()
            done.append(t)
        except Exception as exc:
            t.retries += 1
            if t.retries < 3:
                heapq.heappush(queue, (d + 2 ** t.retries, t))
            else:
                print(f"giving up on {t.name}: {exc}")
    return done
```""",
    """Translate this Python class to idiomatic Rust (a struct with an impl block).

```python
class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, word):
        self.counts[word] = self.counts.get(word, 0) + 1

    def most_common(self, n):
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def total(self):
        return sum(self.counts.values())
```""",
    '''Write pytest tests for this function: normal input, empty input, and one invalid input each.

```python
def parse_duration(text: str) -> int:
    """'1h30m' -> 5400, '45s' -> 45, '2m' -> 120; raises ValueError on anything else."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for ch in text.strip():
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"bad duration: {text!r}")
    if number or not text.strip():
        raise ValueError(f"bad duration: {text!r}")
    return total
```''',
    """This SQL is slow on a table of 50 million rows. Rewrite it so it can use an index on
(status, created_at), and say which index to add if one is still missing.

```sql
SELECT id, status, created_at, total
FROM orders
WHERE lower(status) = 'shipped'
  AND date(created_at) >= '2024-01-01'
ORDER BY created_at DESC
LIMIT 50;
```""",
    """Make this function handle a missing file and invalid JSON by returning the defaults, log a
warning in each case, and return the corrected code.

```python
import json

DEFAULTS = {"theme": "light", "font_size": 12, "autosave": True}


def read_settings(path):
    with open(path) as f:
        data = json.load(f)
    settings = dict(DEFAULTS)
    settings.update(data)
    return settings
```""",
]
