"""The other clients' APIs, each a translator to a `JobSpec` over the shared submit-and-wait
path: OpenAI's (chat, images), AUTOMATIC1111's, AbleRefusal's, the GTX 1060 API's and the
REST plan's."""
