"""The buttons of the prompt widget, with what each does (presentation only; the widget connects them)."""

from magicgui.widgets import CheckBox, PushButton

from ..services.session import SEGMENTATION


def prompt_buttons() -> tuple[PushButton, CheckBox, PushButton, PushButton, PushButton, PushButton, PushButton]:
    """(encode, live preview, segment, commit, propagate, refine labels, clear)."""
    encode = PushButton(
        name="encode",
        text="Encode",
        tooltip="Compute the embeddings of every plane now (cached on disk); click again to cancel",
    )
    live = CheckBox(name="live_preview", text="live preview", value=True, tooltip="Segment whenever the prompts change")
    segment = PushButton(
        name="segment",
        text="Segment",
        tooltip="Preview the objects prompted on the current slice (encodes it first if needed). Click points "
        "on 'prompts' (t or n: toggle positive/negative), draw rectangles on 'boxes': one object per box, and "
        "per positive point outside boxes",
    )
    commit = PushButton(
        name="commit",
        text="Commit",
        tooltip=f"Add the objects to '{SEGMENTATION}' as new labels and clear the prompts [c]",
    )
    propagate = PushButton(
        name="propagate",
        text="Propagate",
        tooltip=f"Stacks: segment the objects prompted on this slice, follow each one up and down the stack until "
        f"it vanishes or changes too much, and add them to '{SEGMENTATION}' as new labels; click again to cancel",
    )
    refine = PushButton(
        name="refine_labels",
        text="Refine labels",
        tooltip="Select a Labels layer (e.g. made elsewhere) in the layer list: each of its objects on this slice "
        "becomes a mask prompt, refined by the model into the preview; Commit adds them as new labels",
    )
    clear = PushButton(name="clear_prompts", text="Clear", tooltip="Remove all prompts and the preview")
    return encode, live, segment, commit, propagate, refine, clear
