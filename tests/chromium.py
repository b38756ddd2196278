"""Headless Chromium for tests, driven over the DevTools protocol on a pipe.

Debian's `chromium` (apt package `chromium`) with --remote-debugging-pipe:
commands go in on the child's fd 3 and answers come out of its fd 4, as
NUL-terminated JSON (the Chrome DevTools Protocol), so no WebDriver and no
websocket library are needed. One page, loaded once, can be watched over
time (the dashboard must update without a reload) and photographed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any, Optional

from workers import worker_process

BINARIES = ('chromium', 'chromium-browser')


def find() -> Optional[str]:
  """The Chromium binary, or None when it is not installed."""
  for name in BINARIES:
    path = shutil.which(name)
    if path:
      return path
  return None


class CdpError(Exception):
  pass


class Chromium:
  """One headless browser with one page (tab)."""

  def __init__(self, binary: str, width: int = 1280, height: int = 900):
    self._profile = tempfile.mkdtemp(prefix='chromium-profile-')
    commands_r, self._commands_w = os.pipe()
    self._answers_r, answers_w = os.pipe()

    def child_setup():
      worker_process.die_with_parent()
      # Onto fds 3 and 4 via fds >= 10, so neither dup2 clobbers the other.
      high_r = fcntl.fcntl(commands_r, fcntl.F_DUPFD, 10)
      high_w = fcntl.fcntl(answers_w, fcntl.F_DUPFD, 10)
      os.dup2(high_r, 3)
      os.dup2(high_w, 4)

    self._process = subprocess.Popen(
        [binary, '--headless', '--no-sandbox', '--disable-gpu',
         '--disable-dev-shm-usage', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run',
         '--no-default-browser-check', '--disable-extensions',
         '--remote-debugging-pipe', f'--user-data-dir={self._profile}',
         f'--window-size={width},{height}', 'about:blank'],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=child_setup)
    os.close(commands_r)
    os.close(answers_w)
    self._buffer = b''
    self._next_id = 0
    self._session: Optional[str] = None
    self.width, self.height = width, height
    target = self.call('Target.createTarget', {'url': 'about:blank'},
                       session=False)['targetId']
    self._session = self.call('Target.attachToTarget',
                              {'targetId': target, 'flatten': True},
                              session=False)['sessionId']
    self.call('Page.enable')
    self.call('Runtime.enable')

  def _read_message(self, deadline: float) -> dict[str, Any]:
    while b'\0' not in self._buffer:
      left = deadline - time.monotonic()
      if left <= 0:
        raise CdpError('no answer from Chromium in time')
      ready, _, _ = select.select([self._answers_r], [], [], left)
      if ready:
        chunk = os.read(self._answers_r, 1 << 20)
        if not chunk:
          raise CdpError('Chromium closed its DevTools pipe (it exited)')
        self._buffer += chunk
    message, self._buffer = self._buffer.split(b'\0', 1)
    return json.loads(message)

  def call(self, method: str, params: Optional[dict[str, Any]] = None,
           session: bool = True, timeout: float = 60.0) -> dict[str, Any]:
    """Sends one DevTools command and returns its result."""
    self._next_id += 1
    message: dict[str, Any] = {'id': self._next_id, 'method': method,
                               'params': params or {}}
    if session and self._session:
      message['sessionId'] = self._session
    os.write(self._commands_w, json.dumps(message).encode() + b'\0')
    deadline = time.monotonic() + timeout
    while True:
      answer = self._read_message(deadline)
      if answer.get('id') != self._next_id:
        continue  # An event, or an answer to an earlier timed-out call.
      if 'error' in answer:
        raise CdpError(f'{method}: {answer["error"]}')
      return answer['result']

  def navigate(self, url: str) -> None:
    self.call('Page.navigate', {'url': url})
    self.wait_for('document.readyState === "complete"')

  def evaluate(self, expression: str) -> Any:
    """The JSON value of a JavaScript expression in the page."""
    result = self.call('Runtime.evaluate', {
        'expression': expression, 'returnByValue': True,
        'awaitPromise': True})
    if 'exceptionDetails' in result:
      raise CdpError(f'{expression}: {result["exceptionDetails"]}')
    return result['result'].get('value')

  def wait_for(self, expression: str, timeout: float = 60.0,
               poll: float = 0.1) -> Any:
    """Polls `expression` until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
      value = self.evaluate(expression)
      if value:
        return value
      if time.monotonic() > deadline:
        raise CdpError(f'still false after {timeout:.0f} s: {expression}')
      time.sleep(poll)

  def screenshot(self, path: str, full_page: bool = True) -> str:
    """Saves a PNG of the page (all of it with full_page)."""
    height = self.height
    if full_page:
      metrics = self.call('Page.getLayoutMetrics')
      height = max(height, int(metrics['cssContentSize']['height']) + 1)
    self.call('Emulation.setDeviceMetricsOverride', {
        'width': self.width, 'height': height, 'deviceScaleFactor': 1,
        'mobile': False})
    data = self.call('Page.captureScreenshot', {'format': 'png'})['data']
    self.call('Emulation.clearDeviceMetricsOverride')
    with open(path, 'wb') as f:
      f.write(base64.b64decode(data))
    return path

  def close(self) -> None:
    try:
      self.call('Browser.close', session=False, timeout=10)
    except (CdpError, OSError):
      pass
    worker_process.terminate(self._process, 10)
    for fd in (self._commands_w, self._answers_r):
      try:
        os.close(fd)
      except OSError:
        pass
    shutil.rmtree(self._profile, ignore_errors=True)
