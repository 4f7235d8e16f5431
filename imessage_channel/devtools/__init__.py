"""Development tools: what the demo, the tests and the benchmarks use to write chat.db rows as Messages does
(`simulator`) and attributedBody blobs as NSArchiver does (`typedstream_writer`). Nothing here runs in the channel."""
