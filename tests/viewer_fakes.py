"""Stand-ins for what the viewer's render loop reads of a browser, shared by the viewer tests."""

import time
from types import SimpleNamespace

from fast_anerf.viewer import c2w_to_viser


class FakeCamera:
    """The part of viser's ``CameraHandle`` that ``ClientRenderer`` reads; values as a browser may send them."""

    def __init__(self, c2w, fov, aspect):
        self.wxyz, self.position = c2w_to_viser(c2w)
        self.fov, self.aspect = fov, aspect

    def on_update(self, callback):
        self.callback = callback


def fake_client(home, client_id: int = 1):
    """A viser client at the home view: ``(client, sent)``, ``sent`` collecting the background images."""
    sent = []
    client = SimpleNamespace(
        client_id=client_id,
        camera=FakeCamera(home.c2w, home.fov_y, home.aspect),
        gui=SimpleNamespace(add_markdown=lambda content, **_: SimpleNamespace(content=content)),
        scene=SimpleNamespace(set_background_image=lambda image, **_: sent.append(image)),
        add_notification=lambda *a, **k: None,
    )
    return client, sent


def wait_until(condition, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 50 ms; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
