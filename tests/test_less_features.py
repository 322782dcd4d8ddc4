"""LESS gradient features on the tiny random Llama (rows encoded by lora_training, tested there): vectorized per-sample gradients
against the reference's batch-size-1 loop, Adam preconditioning (research/targeted.md §9), TRAK's
projector, reproducibility across shards."""

from pathlib import Path

import numpy as np
import pytest
import torch

from curation_assets.methods import less_features as less
from curation_assets.methods.lora_training import encode_conversation

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"
CONVERSATIONS = [
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": " Red. "}],
    [{"role": "user", "content": "Write a long answer about rivers and the sea " * 6}, {"role": "assistant", "content": "Rivers flow to the sea. " * 10}],
    [{"role": "user", "content": "Translate: bonjour"}, {"role": "assistant", "content": "hello"}],
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY)


@pytest.fixture(scope="module")
def lora_model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # a trained adapter: B is no longer zero, so A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def _encode(tokenizer, conversations, max_length=2048):
    return [encode_conversation(tokenizer, c, max_length) for c in conversations]


def test_vectorized_gradients_equal_the_reference_loop(lora_model, tokenizer):
    rows = _encode(tokenizer, CONVERSATIONS)
    fn = less.PerSampleGradients(lora_model)
    # one padded batch of different lengths against batch-size-1 backward passes
    ours = fn(rows, pad_id=tokenizer.eos_token_id)
    loop = less.reference_loop_gradients(lora_model, rows)
    assert ours.shape == loop.shape == (len(rows), fn.dim)
    cos = torch.nn.functional.cosine_similarity(ours, loop, dim=1)
    assert cos.min() > 0.99999
    torch.testing.assert_close(ours, loop, rtol=1e-4, atol=1e-6)


def test_adam_preconditioning_by_hand():
    g = torch.tensor([1.0, -2.0, 0.0], dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(less.adam_precondition(g, zero, zero), torch.tensor([3.16226185, -3.16227371, 0.0], dtype=torch.float64))
    m, v = torch.full((3,), 0.01, dtype=torch.float64), torch.full((3,), 1e-4, dtype=torch.float64)
    torch.testing.assert_close(less.adam_precondition(g, m, v), torch.tensor([3.28660811, -2.98295159, 0.90040527], dtype=torch.float64))
    # the same by hand: m' = .9 m + .1 g, v' = .999 v + .001 g^2, m'/sqrt(v' + 1e-8)
    expect = (0.9 * 0.01 + 0.1 * g) / torch.sqrt(0.999 * 1e-4 + 0.001 * g**2 + 1e-8)
    torch.testing.assert_close(less.adam_precondition(g, m, v), expect)


@pytest.mark.parametrize("proj_dim,model_id", [(300, 0), (256, 1)])
def test_projector_matches_trak_basic_projector(proj_dim, model_id):
    from trak.projectors import BasicProjector, ProjectionType

    grads = torch.randn(6, 5000, generator=torch.Generator().manual_seed(1))
    basis = torch.eye(5000)[[0, 1, 776, 777, 4999]]  # unit rows read the matrix out exactly

    def trak():
        return BasicProjector(grad_dim=5000, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.rademacher, device="cpu",
                              block_size=128, dtype=torch.float32, model_id=model_id)

    expected = trak().project(grads, model_id=model_id)
    whole = less.RademacherProjector(5000, proj_dim, seed=0, model_id=model_id)
    assert torch.equal(whole.project(grads), expected)  # one draw per block: bit for bit
    for chunk_rows, cache in ((777, 0), (1 << 20, 1 << 30)):
        ours = less.RademacherProjector(5000, proj_dim, seed=0, model_id=model_id, chunk_rows=chunk_rows, cache_bytes=cache)
        assert torch.equal(ours.project(basis), trak().project(basis, model_id=model_id))  # the same +-1 entries
        for _ in range(2):  # again: cached or redrawn, the same
            torch.testing.assert_close(ours.project(grads), expected, rtol=1e-5, atol=5e-4)  # row chunks sum in another order


def test_features_reproduce_across_shards(lora_model, tokenizer):
    rows = _encode(tokenizer, CONVERSATIONS)
    dim = less.PerSampleGradients(lora_model).dim
    names = less.lora_parameter_names(lora_model)
    named = dict(lora_model.named_parameters())
    rng = torch.Generator().manual_seed(2)
    moments = {n: (0.01 * torch.randn(named[n].shape, generator=rng), 1e-4 * torch.rand(named[n].shape, generator=rng)) for n in names}
    flat = less.flat_moments(moments, names, "cpu")

    def features(part):
        return less.gradient_features(lora_model, part, less.RademacherProjector(dim, 512, seed=0), pad_id=0, moments=flat, max_tokens=256, buffer_rows=3)

    together = features(rows)
    apart = np.concatenate([features(rows[:1]), features(rows[1:])])
    np.testing.assert_allclose(apart, together, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    # Adam features differ from plain SGD ones and match the projected, normalized loop
    loop = less.reference_loop_gradients(lora_model, rows)
    expect = less.normalize_rows(less.RademacherProjector(dim, 512).project(less.adam_precondition(loop, *flat))).numpy()
    cos = (together * expect).sum(axis=1)
    assert cos.min() > 0.9999


def test_rows_without_scored_tokens_are_an_error(lora_model, tokenizer):
    rows = _encode(tokenizer, CONVERSATIONS[2:3], max_length=40)
    with pytest.raises(ValueError, match="no scored token"):
        less.gradient_features(lora_model, rows, less.RademacherProjector(100, 64), pad_id=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vectorized_gradients_on_gpu(tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY).cuda()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    rows = _encode(tokenizer, CONVERSATIONS)
    ours = less.PerSampleGradients(model)(rows, pad_id=0)
    loop = less.reference_loop_gradients(model, rows)
    assert torch.nn.functional.cosine_similarity(ours, loop, dim=1).min() > 0.9999
