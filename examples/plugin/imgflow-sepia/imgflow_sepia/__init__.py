"""imgflow-sepia: tints images sepia. The plugin example of imgflow's README.

Keep this module light: imgflow imports it to list stages and validate pipelines, so torch is
imported inside the stage's methods only.
"""

from pydantic import Field

from imgflow import Batch, Params, Stage, StageKind, hookimpl

# The classic sepia matrix: each output channel is a weighted sum of R, G and B.
SEPIA = ((0.393, 0.769, 0.189),
         (0.349, 0.686, 0.168),
         (0.272, 0.534, 0.131))


class Sepia(Stage):
    """Tints images sepia: strength 0 leaves them unchanged, 1 is full sepia."""

    name = "sepia"
    kind = StageKind.OTHER
    description = "Sepia tone"

    class Params(Params):
        strength: float = Field(1.0, ge=0, le=1, description="0 = unchanged, 1 = full sepia")

    def setup(self, device):  # once per run: build what process() needs, on the run's device
        import torch

        super().setup(device)
        self.matrix = torch.tensor(SEPIA, device=device)

    def process(self, batch: Batch) -> Batch:
        import torch

        for item in batch.items:  # images may differ in size; see batch.same_size()/stack()
            toned = (self.matrix @ item.image.flatten(1)).view_as(item.image).clamp(0, 1)
            item.image = torch.lerp(item.image, toned, self.params.strength)
            item.results[self.id] = {"strength": self.params.strength}
        return batch


@hookimpl
def register_stages(register):
    register(Sepia)
