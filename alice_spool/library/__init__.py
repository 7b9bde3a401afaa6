"""The models on disk, read without torch: `registry` (the installed models, the default),
`model_files` (what a folder or file is), `family_rules` (what a family lets a request
do), `families`, `loras`, `vaes`, `transformer_files` (a FLUX.1 or SD 3.x transformer
shared as one file), `safetensors_file` (headers, read without loading tensors) and
`removal` (deleting a model, a LoRA or an image, moved aside first)."""
