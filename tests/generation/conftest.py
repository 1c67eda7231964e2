import pytest
import torch

from vlp.generation.diffusion import DiffusionConfig
from vlp.generation.model import TextToImageConfig, TextToImageModel
from vlp.generation.unet import UNetConfig
from vlp.text import BertTextConfig, Tokenizer

CAPTIONS = ["a red circle", "a blue square", "a green triangle on the left", "there is a yellow star", "a big cross"]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is fastest, and kindest to a shared machine. Session-scoped so that it
    is in force before module-scoped fixtures (the attribute classifier) train."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**changes) -> TextToImageConfig:
    """A U-Net of a few thousand parameters at 16x16: enough to exercise every code path."""
    cfg = TextToImageConfig(
        image_size=16,
        text=BertTextConfig(vocab_size=64, dim=16, layers=1, heads=2, mlp_dim=32, max_positions=16, dropout=0.0),
        unet=UNetConfig(
            channels=8, channel_mult=(1, 2), self_attention_levels=[1], cross_attention_levels=[0, 1], heads=2, groups=4
        ),
        diffusion=DiffusionConfig(timesteps=100),
    )
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CAPTIONS * 3, vocab_size=64)


@pytest.fixture
def tiny_model(tokenizer) -> TextToImageModel:
    torch.manual_seed(0)
    model = TextToImageModel(tiny_config())
    model.tokenizer = tokenizer
    return model
