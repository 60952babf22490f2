"""Prompts with words the encoder cannot read are named in one warning line, wherever a prompt is embedded."""

from __future__ import annotations

import torch

from latentmap.interfaces import Encoder, unknown_words, warn_unknown_words
from latentmap.pipeline import Pipeline


class ClosedVocabularyEncoder(Encoder):
    """Knows four words; embeds a prompt as the count of its known words (enough for these tests)."""

    name = "closed"
    embed_dim = 1
    known = frozenset({"a", "red", "circle", "star"})

    def embed_text(self, prompts, *, normalize=False):
        return torch.tensor([[float(sum(w in self.known for w in p.split()))] for p in prompts])

    def embed_image(self, images, *, normalize=False):
        return torch.zeros(len(images), 1)

    def unknown_words(self, prompt: str) -> list[str]:
        return [word for word in prompt.lower().split() if word not in self.known]


class OpenVocabularyEncoder(ClosedVocabularyEncoder):
    unknown_words = None  # like open_clip's BPE: no such method, every word is read


def test_unknown_words_are_listed_once_in_order_and_only_by_encoders_that_have_them():
    assert unknown_words(ClosedVocabularyEncoder(), ["a pink hexagon", "a pink star"]) == ["pink", "hexagon"]
    assert unknown_words(OpenVocabularyEncoder(), ["a pink hexagon"]) == []

    class Wrapper:  # an encoder wrapped by another (as the precision wrapper does) is looked through
        name, inner = "wrapped", ClosedVocabularyEncoder()

    assert unknown_words(Wrapper(), ["a zebra"]) == ["zebra"]


def test_one_line_names_the_words_and_each_word_is_named_once(capsys):
    already: set[str] = set()
    line = warn_unknown_words(ClosedVocabularyEncoder(), ["a pink hexagon", "a red star"], already=already)
    assert line is not None and "'pink', 'hexagon'" in line and "'closed'" in line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning:")
    assert warn_unknown_words(ClosedVocabularyEncoder(), ["a pink circle"], already=already) is None
    assert warn_unknown_words(ClosedVocabularyEncoder(), ["a red circle"]) is None
    assert capsys.readouterr().err == ""


def test_the_pipeline_warns_when_it_embeds_prompts(capsys):
    pipe = Pipeline(prior=None, encoder=ClosedVocabularyEncoder(), generator=None)
    pipe.embed_prompts(["a pink star", "a red circle"])
    pipe.embed_prompts("a pink zebra")  # a later batch: only the new word
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "'pink'" in lines[0] and "'zebra'" in lines[1] and "pink" not in lines[1]


def test_shapes_clip_names_the_words_outside_its_vocabulary():
    import latentmap

    encoder = latentmap.get_encoder("shapes-clip")
    assert unknown_words(encoder, ["a pink hexagon", "top right: small blue square"]) == ["pink", "hexagon"]
    assert unknown_words(encoder, ["a huge star in the upper left corner, with a black background"]) == []


def test_training_validation_names_unknown_words_in_its_prompts_before_training(capsys):
    from latentmap.training.validation import prepare_validation

    holdout = (torch.zeros(2, 1, 3), torch.zeros(2, 1))
    vset = prepare_validation(ClosedVocabularyEncoder(), ["a red circle", "a mauve star"], holdout, image_conditions=1)
    assert vset.text_embeds.shape == (2, 1)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "'mauve'" in err and "'red'" not in err
