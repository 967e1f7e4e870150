"""Front-ends that turn a take's or a request's inputs into what the acoustic model reads (the
speaker image, the teacher's rendering), the same for the features stage and for synthesis, so a
model is never served one thing and trained on another."""
