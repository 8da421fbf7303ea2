"""Where a resource reads its inputs: a URI, or the output of another resource of the namespace."""

from __future__ import annotations

from pydantic import Field, model_validator

from ._base import Model, ModelUri, ObjectName, SecretKeyRef


class JobSource(Model):
    """Reference to another metaspec resource in the same namespace."""

    training_run: ObjectName | None = Field(None, description="Name of a `TrainingRun`.")
    teacher_generation: ObjectName | None = Field(None, description="Name of a `TeacherGeneration`.")


class ModelSource(Model):
    """A model given by URI, or the model produced by a `TrainingRun` of the same namespace."""

    uri: ModelUri | None = Field(
        None,
        description="Model location: `s3://…`, `file://…`/path, `hf://org/name[@revision]` (the Hub: needs "
        "network), or `pvc://claim/path` (a PersistentVolumeClaim of the namespace, mounted read-only). A bare "
        "`org/name` is refused: write `hf://org/name`.",
    )
    from_: JobSource | None = Field(
        None, alias="from", description="Use the model produced by this resource once it has succeeded."
    )
    revision: str | None = Field(
        None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$",
        description="Hub revision (branch, tag or commit) of an `hf://` model, for weights and tokenizer alike; "
        "the same as `hf://org/name@revision`. A commit pins the model exactly.",
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key (default key `HF_TOKEN`) holding a Hugging Face token, for gated or private "
        "`hf://` models: passed to the pods as the `HF_TOKEN` environment variable. The operator never reads it.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow model repositories to run their own Python code. Off: never trusted implicitly.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.uri is None) == (self.from_ is None):
            raise ValueError("give exactly one of `uri` or `from`")
        if self.from_ is not None and (self.from_.training_run is None or self.from_.teacher_generation):
            raise ValueError("`from` of a model must name a `trainingRun`")
        hub = self.uri is not None and self.uri.startswith("hf://")
        if not hub and (self.revision is not None or self.hf_token_secret_ref is not None):
            raise ValueError("`revision` and `hfTokenSecretRef` apply only to `hf://` models")
        pinned = self.uri.partition("@")[2] if hub else ""
        if pinned and self.revision is not None and pinned != self.revision:
            raise ValueError(f"`uri` names revision {pinned!r} but `revision` is {self.revision!r}: give one")
        return self

    @property
    def hub_revision(self) -> str | None:
        """The Hub revision asked for (`revision`, or `@revision` in the URI); None for other sources."""
        if self.uri is None or not self.uri.startswith("hf://"):
            return None
        return self.revision or self.uri.partition("@")[2] or None

    @property
    def location(self) -> str | None:
        """The URI with the Hub revision folded in (`hf://org/name@rev`): what components fetch."""
        if self.hub_revision is None or "@" in str(self.uri):
            return self.uri
        return f"{self.uri}@{self.hub_revision}"

    @property
    def hub_digest(self) -> str | None:
        """`hf:<revision>` for a Hub model with a revision (exact when it is a commit): its served digest."""
        return f"hf:{self.hub_revision}" if self.hub_revision else None
