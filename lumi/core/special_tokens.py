"""The one layout of special-token ids used by the tokenizer, the packed data, the model config and generation.

SentencePiece is trained with exactly these ids (``pad_id=0 unk_id=1 bos_id=2 eos_id=3``) and the chat markers as
user-defined symbols right after them, so every later stage can rely on the constants below; the tokenizer stage
verifies the trained model against them and records them in its metadata.
"""

PAD_TOKEN, PAD_ID = "<pad>", 0
UNK_TOKEN, UNK_ID = "<unk>", 1
BOS_TOKEN, BOS_ID = "<s>", 2
EOS_TOKEN, EOS_ID = "</s>", 3

# ChatML-style markers for SFT/DPO: "<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n...<|im_end|>".
IM_START_TOKEN, IM_START_ID = "<|im_start|>", 4
IM_END_TOKEN, IM_END_ID = "<|im_end|>", 5
CHAT_MARKERS = (IM_START_TOKEN, IM_END_TOKEN)

SPECIAL_IDS = {
    PAD_TOKEN: PAD_ID,
    UNK_TOKEN: UNK_ID,
    BOS_TOKEN: BOS_ID,
    EOS_TOKEN: EOS_ID,
    IM_START_TOKEN: IM_START_ID,
    IM_END_TOKEN: IM_END_ID,
}

# The control ids by role, as the packed manifest records them (the chat markers are ordinary pieces there).
CONTROL_IDS_BY_ROLE = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
