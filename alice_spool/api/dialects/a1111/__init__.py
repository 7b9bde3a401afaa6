"""AUTOMATIC1111's API (`/sdapi/v1/`): txt2img and img2img (`generate`), what its clients
list and poll (`lists`), its options object and error shape (`options`)."""
