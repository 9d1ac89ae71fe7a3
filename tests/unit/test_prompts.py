import pytest

from der_ray.config import FewShotExample, PromptConfig
from der_ray.errors import ConfigError, InvalidRequestError
from der_ray.experts.prompts import PromptFormatter


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{t['role']}>{t['content']}" for t in turns) + "<assistant>"


def test_chat_format_uses_template_and_system():
    f = PromptFormatter(PromptConfig(format="chat", system="Be brief."), _ChatTok())
    assert f.format("Hi?") == "<system>Be brief.<user>Hi?<assistant>"
    assert f.add_special_tokens is False


def test_completion_format_few_shot():
    shots = (FewShotExample("1+1?", " 2"), FewShotExample("2+2?", " 4"))
    cfg = PromptConfig(format="completion", few_shot=shots, stop=("\nQuestion:",))
    f = PromptFormatter(cfg, object())
    assert f.format("3+3?") == (
        "Question: 1+1?\nAnswer: 2\n\nQuestion: 2+2?\nAnswer: 4\n\nQuestion: 3+3?\nAnswer:")
    assert f.stop == ("\nQuestion:",) and f.add_special_tokens is True


def test_chat_without_template_is_a_config_error():
    with pytest.raises(ConfigError, match="no chat template"):
        PromptFormatter(PromptConfig(format="chat"), object(), "gemma")


@pytest.mark.parametrize("bad", ["", "   ", "\n"])
def test_empty_message_rejected(bad):
    with pytest.raises(InvalidRequestError, match="empty prompt"):
        PromptFormatter(PromptConfig(format="completion"), object()).format(bad)
