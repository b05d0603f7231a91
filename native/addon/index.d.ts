// index.d.ts — hand-written types of the native addon (native/addon/addon.cpp). Keep in step with it.
// Failed calls throw an Error whose `code` is the engine status name (BAD_INPUT, IO, OOM, ...).

export interface NativeDevice {
  index: number;
  kind: 'cpu' | 'cuda';
  name: string;
  /** bytes */
  memoryTotal: number;
  /** bytes available now; 0 if unknown */
  memoryFree: number;
  /** CPU worker threads; 0 for GPUs */
  threads: number;
}

export interface LlmtAddon {
  version(): string;
  apiVersion(): number;
  /** JSON text: {"version","api_version","cuda","compiler"} */
  buildInfo(): string;
  listDevices(): NativeDevice[];
  deviceInfo(index: number): NativeDevice;
}
