"""Real-time serving: ``copml serve`` answers predictions over HTTP and logs every one."""
