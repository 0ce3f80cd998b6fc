"""What an extraction run did: :class:`ExtractReport` and its summary lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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

    def summary(self) -> str:
        """A few human-readable lines for the end of a run."""
        lines = [
            f"fastfeat: {self.images} images -> {self.output} "
            f"({self.failures} failed) in {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s "
            + ("steady state" if self.steady else "(a single batch: warm-up included)"),
        ]
        if self.resumed_from:
            lines.append(f"  resumed: {self.resumed_from} rows were already in the store")
        for key, shape in self.shapes.items():
            lines.append(f"  {key}: {tuple(shape)}")
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

    def to_dict(self) -> dict:
        return asdict(self)
