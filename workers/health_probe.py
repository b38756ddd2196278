"""The exec probe of a pod whose health port listens on loopback only.

    python -m workers.health_probe --probe=127.0.0.1:8001/readyz

exits 0 if that route answers HTTP 200 and 1 if it answers anything else
or nothing (Kubernetes' failed probe); a bad --probe is one `error:` line
and exit 2. Health ports listen on loopback when TLS is on, so kubelet's
httpGet probes cannot reach them (k8s/base uses this instead).
"""

from __future__ import annotations

import re
import sys

from absl import flags

from data_prep import entry_point
from data_prep.errors import UserError
from workers import health

_PROBE = flags.DEFINE_string(
    'probe', None, 'HOST:PORT/PATH of the health route to ask, e.g. '
    '127.0.0.1:8001/readyz.')

_PROBE_FORM = re.compile(r'^[^/\s]+:\d{1,5}/\S*$')


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise UserError(
        f'unexpected argument {argv[1]!r}; the only input is '
        '--probe=HOST:PORT/PATH')
  probe = _PROBE.value
  if not probe or not _PROBE_FORM.match(probe):
    raise UserError(
        f'--probe={probe or ""} is not HOST:PORT/PATH; give e.g. '
        '--probe=127.0.0.1:8001/readyz')
  address, path = probe.split('/', 1)
  try:
    status, body = health.get_json(address, '/' + path, timeout=4.0)
  except (OSError, ValueError) as e:
    print(f'probe {probe}: {e}', file=sys.stderr)
    return 1
  if status != 200:
    print(f'probe {probe}: HTTP {status}: {body}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  entry_point.run(main)
