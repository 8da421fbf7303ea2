"""Condition types and reasons the executors set (the operator and `metaspec local` alike).

Users and tools (Argo CD health checks, `kubectl wait --for=condition=...`) match on these strings.
"""

from __future__ import annotations

# ---- condition types ----
COMPLETE = "Complete"  # TrainingRun, TeacherGeneration: the run succeeded
FAILED = "Failed"  # any resource: its current generation failed
SUSPENDED = "Suspended"  # `spec.suspend`, or a SpecServe scaled to zero
QUALITY_CHECK_PASSED = "QualityCheckPassed"  # TeacherGeneration: the natural-stop rate gate
DEPENDENCIES_READY = "DependenciesReady"  # every `from` reference resolved
#: Every kind: a run's output is ready for its dependents (it succeeded), a SpecServe serves with every
#: replica. Its reason explains the phase (`kubectl get` shows it in the REASON column).
READY = "Ready"
TARGET_READY = "TargetReady"  # SpecServe: the target model is loaded
DRAFT_READY = "DraftReady"  # SpecServe: the draft model is loaded

# ---- reasons of a run (named after the Job controller's, which the operator passes on) ----
RUN_COMPLETE = "JobComplete"
RUN_RUNNING = "JobRunning"
RUN_SUSPENDED = "JobSuspended"
RUN_FAILED = "JobFailed"
#: A fail-fast exit code (a permanent error, a failed quality gate) ended the run without retries.
FAIL_FAST = "PodFailurePolicy"
#: The retries (`spec.backoffLimit`) ran out.
RETRIES_EXHAUSTED = "BackoffLimitExceeded"

# ---- reasons of the quality gate ----
QUALITY_PASSED = "QualityCheckPassed"
NATURAL_STOP_RATE_TOO_LOW = "NaturalStopRateTooLow"
QUALITY_CHECK_FAILED = "QualityCheckFailed"  # the component exited with the quality exit code

# ---- reasons of serving ----
REPLICAS_READY = "ReplicasReady"
REPLICAS_NOT_READY = "ReplicasNotReady"
SCALED_TO_ZERO = "ScaledToZero"
SERVING = "Serving"
SERVER_FAILED = "ServerFailed"
MODEL_LOADED = "ModelLoaded"
MODEL_NOT_LOADED = "ModelNotLoaded"

# ---- reasons of dependencies, from least to most severe ----
DEPENDENCIES_RESOLVED = "DependenciesResolved"
DEPENDENCY_NOT_SUCCEEDED = "DependencyNotSucceeded"
DEPENDENCY_NOT_FOUND = "DependencyNotFound"
DEPENDENCY_HAS_NO_ARTIFACT = "DependencyHasNoArtifact"
DEPENDENCY_FAILED = "DependencyFailed"
DEPENDENCY_CYCLE = "DependencyCycle"

# ---- reasons of Events that announce no transition ----
#: SpecServe with `routing.confidenceThreshold: auto` under `first-token` or `per-token`: True when the
#: newest pod serves the draft's calibrated threshold, False when the draft has none (the default serves).
CONFIDENCE_THRESHOLD_CALIBRATED = "ConfidenceThresholdCalibrated"
THRESHOLD_CALIBRATED = "Calibrated"
DRAFT_HAS_NO_CALIBRATION = "DraftHasNoCalibration"
MODEL_CACHE = "ModelCache"  # every kind: where the models came from (`status.modelCache`)

# ---- reasons of refusals ----
INVALID_SPEC = "InvalidSpec"  # the resource does not validate
API_REJECTED = "ApiRejected"  # the API server refused a child object
