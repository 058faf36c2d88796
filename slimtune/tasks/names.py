"""The built-in task names, for the modules below the tasks layer that need one (a generate method
registers under its task: `register("lora", GenLoraConfig, task=GENERATE)`). No imports."""

CLASSIFY = "classify"  # the default: a recipe without `task:`
GENERATE = "generate"
