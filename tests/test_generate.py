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


def test_top_p_keeps_the_likeliest_tokens_that_make_up_p():
    class Skewed(torch.nn.Module):  # next token: 0 (p=0.5), 1 (0.3), 2 (0.2), else ~0
        def forward(self, idx):
            probas = torch.tensor([0.5, 0.3, 0.2] + [1e-9] * (VOCAB - 3))
            return probas.log().expand(*idx.shape, VOCAB)

    generator = torch.Generator().manual_seed(0)
    idx = torch.zeros(2000, 1, dtype=torch.long)

    def drawn(top_p):
        out = generate(Skewed(), idx, 1, 8, temperature=1.0, top_p=top_p,
                       generator=generator)  # fmt: skip
        return torch.bincount(out[:, 1], minlength=VOCAB)

    assert drawn(0.4).tolist() == [2000] + [0] * (VOCAB - 1)  # 0 alone reaches 0.4
    two = drawn(0.7)  # 0 and 1 make up 0.8 >= 0.7; 2 goes
    assert two[2:].sum() == 0 and 1150 < two[0] < 1350  # 0.5 / 0.8 of 2000 = 1250
    assert drawn(0.95)[2] > 0 and drawn(0.95)[3:].sum() == 0
    greedy = generate(Skewed(), idx[:3], 4, 8)
    assert torch.equal(generate(Skewed(), idx[:3], 4, 8, temperature=3.0,
                                top_p=1e-6), greedy)  # fmt: skip


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
        (dict(top_p=0.0, temperature=1.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5, temperature=1.0), r"top_p must be in \(0, 1\]"),
    ],
)
def test_invalid_parameters_are_clear_errors(kwargs, message):
    arguments = dict(max_new_tokens=3, context_size=8) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(Counter(), torch.tensor([[1]]), **arguments)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        generate(Counter(), torch.zeros(1, 0, dtype=torch.long), 3, 8)


class Fixed(torch.nn.Module):
    """A fake model that always gives the same logits for the next token."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, idx):
        return self.logits.expand(*idx.shape, len(self.logits)).clone()


@pytest.mark.parametrize("context_size", [0, -3, 65])
def test_context_sizes_the_model_cannot_take_are_refused(model, context_size):
    message = f"between 1 and the model's context length 64, got {context_size}"
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1, 2]]), 3, context_size)
    with pytest.raises(ValueError, match="context_size"):
        generate_text_simple(model, torch.tensor([[1, 2]]), 3, context_size)


def test_ids_must_be_integers_and_eos_inside_the_vocabulary(model):
    with pytest.raises(TypeError, match="token ids must be integers.*float32"):
        generate(model, torch.tensor([[1.0, 2.0]]), 3, 64)
    with pytest.raises(ValueError, match="eos_id must be an id below 50257, got 50257"):
        generate(model, torch.tensor([[1, 2]]), 3, 64, eos_id=50257)
    with pytest.raises(ValueError, match="got -1"):
        generate(model, torch.tensor([[1, 2]]), 3, 64, eos_id=-1)


def test_nan_logits_are_an_error_not_a_stream_of_zeros():
    with pytest.raises(FloatingPointError, match="NaN logits"):
        generate(Fixed([float("nan")] * 5), torch.tensor([[1]]), 4, 8)


def test_top_k_keeps_exactly_k_tokens_even_when_tied():
    tied = Fixed([1.0] * 10)
    generator = torch.Generator().manual_seed(0)
    out = generate(
        tied,
        torch.zeros(200, 1, dtype=torch.long),
        1,
        8,
        temperature=1.0,
        top_k=2,
        generator=generator,
    )
    assert len(set(out[:, 1].tolist())) == 2


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -0.5])
def test_temperatures_that_mean_nothing_are_refused(temperature):
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(Counter(), torch.tensor([[1]]), 2, 8, temperature=temperature)


def test_a_tiny_temperature_is_greedy_not_an_error():
    out = generate(
        Counter(),
        torch.tensor([[1]]),
        5,
        8,
        temperature=1e-38,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.tolist() == [[1, 2, 3, 4, 5, 6]]


@pytest.mark.parametrize("bad", [50257, -1])
def test_prompt_ids_outside_the_vocabulary_are_named(model, bad):
    with pytest.raises(ValueError, match=f"token id {bad} at index \\(0, 1\\)"):
        generate(model, torch.tensor([[1, bad]]), 3, 64)
    with pytest.raises(ValueError, match=f"token id {bad}"):
        generate_text_simple(model, torch.tensor([[1, bad]]), 3, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=2.5), "max_new_tokens must be an integer, got 2.5"),
        (dict(context_size=4.5), "context_size must be an integer, got 4.5"),
        (dict(context_size=True), "context_size must be an integer, got True"),
    ],
)
def test_budgets_that_are_not_integers_are_refused(model, kwargs, message):
    args = dict(max_new_tokens=3, context_size=64) | kwargs
    with pytest.raises(TypeError, match=message):
        generate(model, torch.tensor([[1, 2]]), **args)


@pytest.mark.parametrize(
    "ids", [torch.tensor([[True, False]]), torch.tensor([[1, 2]], dtype=torch.int8)]
)
def test_prompts_of_a_type_that_cannot_index_are_refused(model, ids):
    with pytest.raises(TypeError, match="token ids must be integers"):
        generate(model, ids, 3, 64)
