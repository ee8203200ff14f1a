import * as grpc from '@grpc/grpc-js';
import * as api from '../generated/runtime/v1/api';
import { aliasService } from '../server/instrument';

type RuntimeDef = typeof api.RuntimeServiceService;
type ImageDef = typeof api.ImageServiceService;
type Def = RuntimeDef & ImageDef;
type MethodKey = keyof Def;
type Req<K extends MethodKey> = Parameters<Def[K]['requestSerialize']>[0];
type Res<K extends MethodKey> = ReturnType<Def[K]['responseDeserialize']>;
type UnaryKey = { [K in MethodKey]: Def[K]['responseStream'] extends false ? K : never }[MethodKey];
type StreamKey = Exclude<MethodKey, UnaryKey>;

/** Partial request objects, completed with protobuf defaults before sending. */
export type Partial2<T> = T extends bigint | number | string | boolean | Uint8Array
  ? T
  : T extends (infer U)[]
    ? Partial2<U>[]
    : T extends object
      ? { [K in keyof T]?: Partial2<T[K]> }
      : T;

interface Codec {
  fromPartial(value: unknown): unknown;
}

/** Request message of each method, by ts-proto's export name (one RPC breaks the naming pattern). */
function requestCodec(def: grpc.MethodDefinition<unknown, unknown>): Codec {
  const method = def.path.slice(def.path.lastIndexOf('/') + 1);
  const name = method === 'GetContainerEvents' ? 'GetEventsRequest' : `${method}Request`;
  const codec = (api as unknown as Record<string, Codec | undefined>)[name];
  if (!codec?.fromPartial) throw new Error(`no request message ${name} for ${def.path}`);
  return codec;
}

/**
 * A promise-based CRI client over a unix socket, for tests, benchmarks and tooling. It speaks
 * runtime.v1 or, for checking old-kubelet compatibility, runtime.v1alpha2.
 */
export class CriClient {
  private readonly clients: grpc.Client[];
  private readonly methods = new Map<string, { client: grpc.Client; def: grpc.MethodDefinition<unknown, unknown>; codec: Codec }>();

  constructor(
    readonly endpoint: string,
    apiVersion: 'v1' | 'v1alpha2' = 'v1',
  ) {
    const target = endpoint.startsWith('unix:') ? endpoint : `unix://${endpoint}`;
    // No channelz: its per-call bookkeeping would be most of what a small call costs here.
    const options = { 'grpc.max_receive_message_length': 64 * 1024 * 1024, 'grpc.enable_channelz': 0 };
    this.clients = [];
    for (const [serviceName, service] of [
      ['RuntimeService', api.RuntimeServiceService],
      ['ImageService', api.ImageServiceService],
    ] as const) {
      let definition = service as unknown as grpc.ServiceDefinition;
      if (apiVersion === 'v1alpha2') definition = aliasService(definition, 'runtime.v1', 'runtime.v1alpha2');
      const Ctor = grpc.makeGenericClientConstructor(definition, `runtime.${apiVersion}.${serviceName}`);
      const client = new Ctor(target, grpc.credentials.createInsecure(), options);
      this.clients.push(client);
      for (const [key, def] of Object.entries(definition)) {
        this.methods.set(key, { client, def: def as grpc.MethodDefinition<unknown, unknown>, codec: requestCodec(def) });
      }
    }
  }

  /** Calls a unary RPC, e.g. `call('version', {})`. Rejects with the grpc ServiceError. */
  call<K extends UnaryKey>(method: K, request: Partial2<Req<K>>, options: { timeoutMs?: number } = {}): Promise<Res<K>> {
    const { client, def, codec } = this.methods.get(method)!;
    const deadline = new Date(Date.now() + (options.timeoutMs ?? 60_000));
    return new Promise((resolve, reject) => {
      client.makeUnaryRequest(
        def.path,
        def.requestSerialize,
        def.responseDeserialize,
        codec.fromPartial(request),
        new grpc.Metadata(),
        { deadline },
        (err, value) => (err ? reject(err) : resolve(value as Res<K>)),
      );
    });
  }

  /** Opens a server-streaming RPC; iterate the result with `for await`. */
  stream<K extends StreamKey>(method: K, request: Partial2<Req<K>>): grpc.ClientReadableStream<Res<K>> {
    const { client, def, codec } = this.methods.get(method)!;
    return client.makeServerStreamRequest(
      def.path,
      def.requestSerialize,
      def.responseDeserialize,
      codec.fromPartial(request),
      new grpc.Metadata(),
      {},
    ) as grpc.ClientReadableStream<Res<K>>;
  }

  close(): void {
    for (const client of this.clients) client.close();
  }
}
