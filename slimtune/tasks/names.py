"""The built-in task names, for the modules below the tasks layer that need one (a generate method
registers under its task: `register("lora", GenLoraConfig, task=GENERATE)`), and each one's default
token length. No imports."""

CLASSIFY = "classify"  # the default: a recipe without `task:`
GENERATE = "generate"

# Tokens per text when nothing sets a length: the one default of each task (`Task.default_length`),
# always cut to the model's positions (`text.length_for`). generate counts prompt + response.
DEFAULT_LENGTH = {CLASSIFY: 128, GENERATE: 256}
