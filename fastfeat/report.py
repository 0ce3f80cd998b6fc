"""What an extraction run did: :class:`ExtractReport` and its summary lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class NoImagesWarning(RuntimeWarning):
    """No image of the run could be read: its store holds failures only (the CLI exits 1)."""


@dataclass
class ExtractReport:
    """What a run did.

    Attributes:
        output: the store's path.
        images: images extracted by this run (a resumed run counts only its own).
        rows: feature rows written by this run (images x (1 + augmented copies)).
        failures: files that could not be read in this run.
        seconds: wall-clock time of the whole run, model build included.
        images_per_second: steady-state throughput (after the first, warm-up batch).
        startup_seconds: catalog, model build and first batch.
        startup: start-up stage by stage, seconds: ``catalog``, ``model_build`` (TensorFlow runtime
            and the model), ``precision`` (deciding ``auto``), ``first_batch`` (waiting for the first
            input batch, tracing and inferring it).
        shapes: feature key -> row shape.
        stages: seconds spent waiting for input, in inference and waiting for the writer.
        complete_already: a resume found the store complete: nothing was built or written.
        estimated_bytes: the features' size uncompressed (rows x bytes per row), told up front.
        float16_underflow: nonzero feature values stored as 0 by ``dtype="float16"`` in this run.
    """

    output: str
    images: int
    failures: int
    seconds: float
    images_per_second: float
    rows: int = 0
    steady: bool = True
    startup_seconds: float = 0.0
    startup: dict = field(default_factory=dict)
    model: str = ""
    layers: list[str] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    precision: str = "float32"
    precision_auto: dict | None = None
    device: str = ""
    nonfinite: int = 0
    batch_size: int = 0
    interrupted: bool = False
    resumed_from: int = 0
    stages: dict = field(default_factory=dict)
    failure_list: list = field(default_factory=list)
    complete_already: bool = False
    estimated_bytes: int = 0
    float16_underflow: int = 0

    def summary(self) -> str:
        """A few human-readable lines for the end of a run."""
        if self.complete_already:
            return (f"fastfeat: {self.output} is complete already ({self.resumed_from} rows): nothing to resume "
                    "(use --overwrite to redo it)")  # fmt: skip
        rows = f" ({self.rows} rows with their augmented copies)" if self.rows != self.images else ""
        lines = [
            f"fastfeat: {self.images} images{rows} -> {self.output} "
            f"({self.failures} failed) in {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s "
            + ("steady state" if self.steady else "(a single batch: warm-up included)"),
        ]
        if self.resumed_from:
            lines.append(f"  resumed: {self.resumed_from} rows were already in the store")
        for key, shape in self.shapes.items():
            lines.append(f"  {key}: {tuple(shape)}")
        if self.float16_underflow:
            lines.append(f"  float16: {self.float16_underflow} nonzero values stored as 0 (too small)")
        if self.estimated_bytes:
            from .store.guards import human_bytes

            lines.append(f"  store: {human_bytes(self.estimated_bytes)} of features (uncompressed)")
        if self.precision_auto:
            auto = self.precision_auto
            rates = ", ".join(f"{k} {v:.1f} img/s" for k, v in auto.get("images_per_second", {}).items() if v)
            detail = f"{auto.get('source')}{': ' + rates if rates else ''}; {auto.get('reason', '')}"
            lines.append(f"  precision: auto -> {self.precision} on {self.device} ({detail})")
        elif self.device:
            lines.append(f"  precision: {self.precision} on {self.device}")
        if self.startup:
            lines.append(f"  start-up {self.startup_seconds:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.startup.items()))
        if self.stages and self.steady:
            lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items()))
        for path, reason in self.failure_list[:10]:
            lines.append(f"  failed: {path}: {reason}")
        if len(self.failure_list) > 10:
            lines.append(f"  ... and {len(self.failure_list) - 10} more (see FeatureStore.failures)")
        if self.interrupted:
            lines.append("  interrupted: the store is incomplete; run again with --resume to finish it")
        return "\n".join(lines)

    @property
    def no_images(self) -> bool:
        """Whether files were tried and none could be read (a resumed store's earlier rows aside)."""
        return self.images == 0 and self.failures > 0 and not self.resumed_from

    def no_images_message(self) -> str:
        first = f" (first: {self.failure_list[0][0]}: {self.failure_list[0][1]})" if self.failure_list else ""
        return (
            f"no image could be read: all {self.failures} files failed{first}, so {self.output!r} holds no "
            "features. Fix or replace the files, then run again with --overwrite."
        )

    def to_dict(self) -> dict:
        return asdict(self)
