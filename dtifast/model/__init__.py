"""The DTI-Sprites model and its parts."""
from .dti_sprites import DTISprites, ModelOutput, build_model
from .encoders import Encoder, autocast_encoder
from .heads import BatchedMLP
from .transforms import TransformSequence

__all__ = ["DTISprites", "ModelOutput", "build_model", "Encoder", "BatchedMLP", "TransformSequence",
           "autocast_encoder"]
