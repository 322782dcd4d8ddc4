"""The tagger: open tags for instructions, from an LLM (endpoint or local) or offline keyphrases."""

from typing import Literal

from pydantic import Field

from curation_assets.methods.tagging import CRITIC_SYSTEM, CRITIC_USER, MAX_CRITIC_ROUNDS, PROMPTS, critic_messages, keyphrase_tags, parse_tags, parse_tags_reference, same_tags, tagging_messages
from resources.llm import ChatModelResource, Completion, version_hash
from resources.models import PACKAGED_EMBEDDER, EmbedderResource


class TaggerResource(ChatModelResource):
    """Tags each instruction with [{tag, explanation}].

    backend "keyphrase" (default) runs offline on the packaged embedder; "openai" calls any
    OpenAI-compatible endpoint; "transformers" generates with a local model. TACOS's settings for
    LLM tagging are the defaults: temperature 0.6, top_p 1, 1,024 tokens, 3 retries.
    """

    backend: Literal["keyphrase", "openai", "transformers"] = Field("keyphrase", description="keyphrase (offline), openai or transformers.")
    prompt_style: Literal["instag", "atomic"] = Field("instag", description="instag: InsTag/TACOS intention tags; atomic: TAGS knowledge concepts.")
    temperature: float = 0.6
    include_input: bool = Field(False, description="Show the Alpaca input field too (TACOS shows the instruction only).")
    parser: Literal["robust", "reference"] = Field("robust", description="LLM answers: robust (validated, tags stripped; see parse_tags) or reference (TACOS's fenced-or-plain JSON split, tags verbatim).")
    embedder_model: str = Field(PACKAGED_EMBEDDER, description="keyphrase backend: sentence-transformers model.")
    top_n: int = Field(5, description="keyphrase backend: tags per instruction.")
    min_ngram: int = Field(1, description="keyphrase backend: shortest keyphrase in words.")
    max_ngram: int = Field(2, description="keyphrase backend: longest keyphrase in words.")
    diversity: float = Field(0.5, description="keyphrase backend: MMR diversity, 0 = pure similarity.")
    min_df: int = Field(1, description="keyphrase backend: keep keyphrases found in at least this many texts of a batch (a shard's chunk).")
    critic_rounds: int = Field(0, ge=0, le=MAX_CRITIC_ROUNDS, description="LLM backends: TAGS's critic pass, rounds of 'check and correct these tags' after tagging (0 = off, at most 3).")

    def version(self) -> str:
        if self.backend == "keyphrase":
            key = {"backend": "keyphrase", "method": "keybert", "embedder": self.embedder_model, "top_n": self.top_n, "ngrams": [self.min_ngram, self.max_ngram], "diversity": self.diversity, "min_df": self.min_df}
        else:
            key = {**self.generation_key(), "prompt": self.prompt_style, "prompt_text": PROMPTS[self.prompt_style]}
            if self.parser != "robust":  # robust answers cached before the setting existed stay valid
                key["parser"] = self.parser
            if self.critic_rounds:  # likewise answers cached without a critic
                key["critic"] = {"rounds": self.critic_rounds, "prompt_text": [CRITIC_SYSTEM, CRITIC_USER]}
        return version_hash(key, self.include_input)

    def text_for(self, instruction: str, input_text: str) -> str:
        return instruction + ("\n" + input_text if self.include_input and input_text else "")

    def tag(self, texts: list[str]) -> list[Completion]:
        if self.backend == "keyphrase":
            embedder = EmbedderResource(model=self.embedder_model, device=self.device)
            tags = keyphrase_tags(texts, embedder.encode, top_n=self.top_n, ngram_range=(self.min_ngram, self.max_ngram), diversity=self.diversity, min_df=self.min_df)
            return [Completion(True, value=t, attempts=1) if t else Completion(False, error="no keyphrase found", attempts=1) for t in tags]
        parse = parse_tags_reference if self.parser == "reference" else parse_tags
        results = self.generate([tagging_messages(t, self.prompt_style) for t in texts], parse)
        return self.critique(texts, results, parse)

    def critique(self, texts: list[str], results: list[Completion], parse) -> list[Completion]:
        """TAGS's critic pass: each tagged row's query and tags go back to the model, whose corrected
        list replaces them; a row stops when the critic returns the same tags or after
        `critic_rounds`. A critic answer that fails keeps the tags before it, with the reason in
        `error` (the row stays tagged); `attempts` counts every call."""
        pending = [i for i, r in enumerate(results) if r.ok]
        for round_ in range(1, self.critic_rounds + 1):
            if not pending:
                break
            answers = self.generate([critic_messages(texts[i], results[i].value) for i in pending], parse)
            changed = []
            for i, answer in zip(pending, answers):
                row = results[i]
                row.attempts += answer.attempts
                if not answer.ok:
                    row.error = f"critic round {round_}: {answer.error}; kept the tags before it"
                elif not same_tags(answer.value, row.value):
                    row.value, row.text = answer.value, answer.text
                    changed.append(i)
            pending = changed
        return results
