"""llmbook.generate.generate: greedy, sampling, top-k, end of sequence, bad input."""

import pytest
import torch

from llmbook.generate import generate, generate_text_simple
from llmbook.model import GPTConfig, GPTModel

VOCAB = 10


class Counter(torch.nn.Module):
    """A fake model whose best next token is always (last token + 1) % VOCAB."""

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, VOCAB)
        best = (idx + 1) % VOCAB
        return logits.scatter(-1, best.unsqueeze(-1), 5.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPTModel(GPTConfig.preset("debug", drop_rate=0.0)).eval()


def test_temperature_zero_is_greedy(model):
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert torch.equal(
        generate(model, idx, 6, 64), generate_text_simple(model, idx, 6, 64)
    )


def test_top_k_one_is_greedy_at_any_temperature(model):
    idx = torch.tensor([[7, 8]])
    greedy = generate(model, idx, 5, 64)
    assert torch.equal(generate(model, idx, 5, 64, temperature=5.0, top_k=1), greedy)


def test_sampling_is_reproducible_with_a_generator(model):
    idx = torch.tensor([[7, 8]])

    def sample(seed):
        generator = torch.Generator().manual_seed(seed)
        return generate(model, idx, 8, 64, temperature=1.5, generator=generator)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))


def test_top_k_never_draws_outside_the_k_best():
    generator = torch.Generator().manual_seed(0)
    idx = torch.zeros(200, 1, dtype=torch.long)
    out = generate(Counter(), idx, 1, 8, temperature=50.0, top_k=1, generator=generator)
    assert (out[:, 1] == 1).all()
    out = generate(Counter(), idx, 1, 8, temperature=50.0, generator=generator)
    assert len(out[:, 1].unique()) > 3  # a flat distribution without top-k


def test_stops_at_end_of_sequence_and_pads_finished_rows():
    idx = torch.tensor([[2], [5]])
    out = generate(Counter(), idx, max_new_tokens=10, context_size=8, eos_id=6)
    assert out.tolist() == [[2, 3, 4, 5, 6], [5, 6, 6, 6, 6]]
    no_eos = generate(Counter(), idx, max_new_tokens=3, context_size=8)
    assert no_eos.tolist() == [[2, 3, 4, 5], [5, 6, 7, 8]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_k=0), "top_k must be between 1 and 10, got 0"),
        (dict(top_k=11, temperature=1.0), "top_k must be between 1 and 10, got 11"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
    ],
)
def test_invalid_parameters_are_clear_errors(kwargs, message):
    arguments = dict(max_new_tokens=3, context_size=8) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(Counter(), torch.tensor([[1]]), **arguments)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        generate(Counter(), torch.zeros(1, 0, dtype=torch.long), 3, 8)
