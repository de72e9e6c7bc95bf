"""The labeling interface experts see, generated from the project's classes.

One screen per image: the image and, beside it, the Grad-CAM overlay of the class the
model predicted; one single-choice question for the class (pre-selected with the model's
guess when the project shows predictions) and one optional checkbox "the model looked at
the wrong region", which is stored with the label and reported per class. With the box ticked
the expert may draw, with the rectangle tool, the region the model should have looked at on
the image (service.labelstudio.regions: stored in pixels of the file, the counterexamples of
explanatory feedback are made of it, engine.counterexamples).

The names below are the contract between this config, the tasks we import and the
annotations we read back; change them only together with a migration of old projects.
"""
from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

IMAGE = "image"            # task data key and <Image name> of the picture to label
HEATMAP = "heatmap"        # task data key and <Image name> of the Grad-CAM overlay
GUESS = "model_guess"      # task data key: the model's guess in words, shown as a header
ITEM_ID = "camloop_item_id"  # task data key: camloop's item id, how labels find their item
ROUND = "camloop_round"    # task data key: the round that queued the task
RANK = "camloop_rank"      # task data key: 0-based priority within the round's batch
CLASS_FROM = "label"       # <Choices name> of the class question
WRONG_FROM = "wrong_region"  # <Choices name> of the wrong-region flag
WRONG_VALUE = "The model looked at the wrong region"
REGION_FROM = "right_region"  # <Rectangle name> of the region the model should have looked at


def validate_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise ValueError("a classification project needs at least two classes")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names: {names}")
    for n in names:
        if not n.strip() or n != n.strip():
            raise ValueError(f"class name {n!r} is empty or has surrounding spaces")
    return names


def labeling_config(classes: Sequence[str]) -> str:
    """Label Studio XML for `classes` (order kept: it is the order experts see)."""
    names = validate_classes(classes)
    choices = "\n".join(f"      <Choice value={quoteattr(n)}/>" for n in names)
    # Both pictures at their own pixel size (defaultZoom="original"; Label Studio's default
    # stretches them to the column), which camloop makes the same for the two: small images are
    # served enlarged by a whole factor, the overlay drawn at that size (service.core.display). No
    # smoothing when the expert zooms in, so pixels stay blocks in both.
    picture = 'zoom="true" zoomControl="true" defaultZoom="original" smoothing="false"'
    return f"""<View>
  <Header value="Model's guess: ${GUESS}" size="5"/>
  <View style="display: flex; gap: 1em; flex-wrap: wrap;">
    <View style="flex: 1; min-width: 240px;">
      <Header value="Image" size="6"/>
      <Image name="{IMAGE}" value="${IMAGE}" {picture}/>
    </View>
    <View style="flex: 1; min-width: 240px;">
      <Header value="Where the model looked (Grad-CAM of its guess)" size="6"/>
      <Image name="{HEATMAP}" value="${HEATMAP}" {picture}/>
    </View>
  </View>
  <Header value="Which class is this image?" size="5"/>
  <Choices name="{CLASS_FROM}" toName="{IMAGE}" choice="single-radio" required="true" showInline="true">
{choices}
  </Choices>
  <Choices name="{WRONG_FROM}" toName="{HEATMAP}" choice="multiple">
    <Choice value={quoteattr(WRONG_VALUE)}/>
  </Choices>
  <Header value="Wrong region? Draw where it should have looked: the rectangle tool, then drag on the image" size="6"/>
  <Rectangle name="{REGION_FROM}" toName="{IMAGE}" strokeWidth="3" strokeColor="#00c853" canRotate="false"/>
</View>"""  # no trailing newline: Label Studio stores the config stripped, and we compare to it


def prediction(predicted_class: str, score: float | None, model_version: str) -> dict:
    """A Label Studio prediction that pre-selects the model's class for the expert.

    `score` is the model's probability for the class (Label Studio sorts and filters tasks by
    it); None leaves it out rather than inventing one."""
    if score is not None and not 0.0 <= float(score) <= 1.0:
        raise ValueError(f"a prediction score is a probability in [0, 1], got {score!r}")
    out = {
        "model_version": model_version,
        "result": [{
            "from_name": CLASS_FROM, "to_name": IMAGE, "type": "choices",
            "value": {"choices": [predicted_class]},
        }],
    }
    if score is not None:
        out["score"] = float(score)
    return out


# model_version of every prediction camloop imports, one for all rounds. Label Studio serves a
# task only the predictions of the project's model_version: a version per round would drop the
# pre-selected guess of every task still open from an earlier round the moment the next round's
# batch is imported. The round a task belongs to is in its data (ROUND); the expert sees neither.
MODEL_VERSION = "camloop"
