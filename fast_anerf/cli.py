"""The ``fast-anerf`` command line: ``train | refine | render | view | eval | data``.

Each subcommand is a frozen dataclass whose docstring and field comments become ``--help``; its ``.main()``
does the work. Heavy modules are imported inside ``main()`` so that ``--help`` stays instant.

A ``UserError`` (bad input, missing file, unusable checkpoint ...) is printed as one line,
``error: <message>``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from fast_anerf.errors import UserError

Backend = Literal["auto", "torch", "tcnn"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Train:
    """Train a character (fast per-bone hash-grid field, or the original A-NeRF field) on A-NeRF data."""

    data: Path | None = None
    """Folder with train.h5 (and test_view.h5 / test_pose.h5), or one .h5 file. Default: the built-in
    character, generated on first use."""
    out: Path = Path("runs/demo")
    """Output folder: checkpoints, TensorBoard logs, previews, eval.json."""
    preset: str = "demo"
    """Config preset: a name from configs/ (demo, gpu, surreal, mixamo, h36m, perfcap) or a .toml path."""
    field: Literal["fast", "anerf"] | None = None
    """Field type; overrides the preset. 'anerf' is the original A-NeRF model (our baseline)."""
    steps: int | None = None
    """Number of training steps; overrides the preset."""
    max_minutes: float | None = None
    """Stop after this many minutes of training (a checkpoint and the evaluation are still written)."""
    resume: bool = False
    """Continue from OUT/checkpoint.pt (same config); the result equals an uninterrupted run."""
    backend: Backend = "auto"
    """Encoding/MLP backend: 'tcnn' (tiny-cuda-nn, CUDA), 'torch' (everywhere) or the fastest available."""
    device: Device = "auto"
    """Where to train: 'cuda' when available under 'auto'."""
    seed: int | None = None
    """Random seed; overrides the preset."""
    eval_every: int | None = None
    """Evaluate on held-out views every N steps (0 = only at the end); overrides the preset."""
    gt_poses: bool = False
    """Train on the file's true poses (gt_skts, e.g. the built-in character) instead of its estimated ones."""

    def main(self) -> None:
        from fast_anerf.train import run_training

        run_training(self)


@dataclass(frozen=True)
class Eval:
    """PSNR and SSIM (whole image and foreground-masked) of a trained character on held-out splits."""

    ckpt: Path
    """Checkpoint written by `fast-anerf train` (OUT/checkpoint.pt)."""
    data: Path | None = None
    """Folder with test_view.h5 / test_pose.h5, or one .h5. Default: the data the model was trained on."""
    json: Path | None = None
    """Also write the metrics here as JSON."""
    max_frames: int | None = None
    """Evaluate at most this many frames per split (evenly spread)."""
    device: Device = "auto"
    backend: Backend = "auto"

    def main(self) -> None:
        from fast_anerf.evaluate import run_eval

        run_eval(self)


@dataclass(frozen=True)
class Synth:
    """Generate the built-in character: train.h5, test_view.h5, test_pose.h5 (cached for reuse)."""

    out: Path | None = None
    """Output folder (default: ~/.cache/fast_anerf/builtin, or $FAST_ANERF_CACHE/builtin)."""
    frames: int = 100
    """Training frames."""
    res: int = 128
    """Image height and width in pixels."""
    seed: int = 0
    """Random seed (poses, pose noise, cameras)."""
    force: bool = False
    """Regenerate even if a cached set with the same parameters exists."""

    def main(self) -> None:
        from fast_anerf.data.synthetic import default_data_dir, generate_dataset

        out = self.out if self.out is not None else default_data_dir()
        paths = generate_dataset(out, n_frames=self.frames, resolution=self.res, seed=self.seed, force=self.force)
        for name, path in paths.items():
            print(f"{name}: {path}")


@dataclass(frozen=True)
class Inspect:
    """Print what an A-NeRF .h5 holds and write a contact sheet of frames with the projected joints."""

    path: tyro.conf.Positional[Path]
    """The .h5 file."""
    sheet: Path | None = None
    """Where to write the contact-sheet PNG (default: next to the file, <name>_sheet.png)."""
    frames: int = 16
    """How many frames the contact sheet shows."""

    def main(self) -> None:
        from fast_anerf.data.inspect import inspect_file

        sheet = self.sheet if self.sheet is not None else self.path.with_name(self.path.stem + "_sheet.png")
        print(inspect_file(self.path, sheet_path=sheet, n_frames=self.frames))


@dataclass(frozen=True)
class Data:
    """Data tools: generate the built-in character, inspect an .h5."""

    action: tyro.conf.OmitArgPrefixes[
        Annotated[Synth, tyro.conf.subcommand("synth")] | Annotated[Inspect, tyro.conf.subcommand("inspect")]
    ]

    def main(self) -> None:
        self.action.main()


def _not_built(name: str, issue: str):
    @dataclass(frozen=True)
    class NotBuilt:
        def main(self) -> None:
            raise UserError(f"`fast-anerf {name}` is not built yet (see the issue '{issue}')")

    NotBuilt.__doc__ = f"(not built yet) {issue}."
    NotBuilt.__name__ = NotBuilt.__qualname__ = name.capitalize()
    return NotBuilt


Refine = _not_built("refine", "Pose refinement")
Render = _not_built("render", "Rendering: bullet-time, retargeting, interpolation and meshes")
View = _not_built("view", "Interactive viewer")

Command = (
    Annotated[Train, tyro.conf.subcommand("train")]
    | Annotated[Refine, tyro.conf.subcommand("refine")]
    | Annotated[Render, tyro.conf.subcommand("render")]
    | Annotated[View, tyro.conf.subcommand("view")]
    | Annotated[Eval, tyro.conf.subcommand("eval")]
    | Annotated[Data, tyro.conf.subcommand("data")]
)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    command = tyro.cli(Command, args=argv, prog="fast-anerf", config=(tyro.conf.OmitSubcommandPrefixes,))
    try:
        command.main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def main() -> None:
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
