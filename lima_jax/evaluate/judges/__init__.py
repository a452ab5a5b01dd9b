"""Judges: the interface (`base`), the SPEC syntax and factory (`spec`), an OpenAI-compatible
endpoint (`openai`), a local lima_jax model (`local`), the deterministic test stand-in (`length`)
and the reference-answer judge of the tiny ablation (`reference`)."""

from lima_jax.evaluate.judges.base import Judge, JudgeError, JudgeOptions
from lima_jax.evaluate.judges.length import LengthJudge
from lima_jax.evaluate.judges.spec import make_judge

__all__ = ["Judge", "JudgeError", "JudgeOptions", "LengthJudge", "make_judge"]
