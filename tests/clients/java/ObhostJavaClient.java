// An orchestrator's side in Java, as OCP would write it: grpc-java (Debian's
// libgrpc-java 1.41 with grpc-netty) and stubs generated from proto/ by protoc
// with grpc-java's plugin. Built and run by tests/java_client.rs.
//
//   tcp HOST:PORT CA CERT KEY TOKEN HOME MYSQL_PORT AGENT_PORT
//       the four host steps of "Start OB server" over mTLS + bearer token,
//       followed to the end with WatchSteps; a replayed step id; a refused
//       request and its message.
//   sink PORT
//       a StepReporter on 127.0.0.1:PORT; prints one JSON line per step pushed.
//   unix SOCKET
//       GetHostInfo over obhostd's Unix socket (netty's native epoll), or
//       "SKIPPED: <why>" when this netty has no native transport.
import dev.obhost.api.v1.*;
import io.grpc.*;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.MetadataUtils;
import io.grpc.stub.StreamObserver;
import java.io.File;
import java.net.InetSocketAddress;
import java.util.*;
import java.util.concurrent.*;

public class ObhostJavaClient {
    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static StepMeta meta(String id, String dag) {
        return StepMeta.newBuilder().setStepId(id).setDagId(dag)
            .setTimeout(com.google.protobuf.Duration.newBuilder().setSeconds(60)).build();
    }

    public static void main(String[] args) throws Exception {
        switch (args[0]) {
            case "tcp": tcp(args); break;
            case "sink": sink(Integer.parseInt(args[1])); break;
            case "unix": unix(args[1]); break;
            default: throw new IllegalArgumentException(args[0]);
        }
    }

    static void tcp(String[] a) throws Exception {
        String[] hp = a[1].split(":");
        String home = a[6];
        int mysqlPort = Integer.parseInt(a[7]);
        int agentPort = Integer.parseInt(a[8]);
        Metadata auth = new Metadata();
        auth.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + a[5]);
        ManagedChannel channel = NettyChannelBuilder.forAddress(hp[0], Integer.parseInt(hp[1]))
            .overrideAuthority("localhost")
            .sslContext(GrpcSslContexts.forClient()
                .trustManager(new File(a[2]))
                .keyManager(new File(a[3]), new File(a[4]))
                .build())
            .intercept(MetadataUtils.newAttachHeadersInterceptor(auth))
            .build();
        HostAgentGrpc.HostAgentBlockingStub agent = HostAgentGrpc.newBlockingStub(channel);
        HostAgentGrpc.HostAgentStub async = HostAgentGrpc.newStub(channel);

        // Follow the DAG before it starts, as OCP's task view would.
        String dag = "java-dag";
        Set<String> ids = new HashSet<>(List.of("java-prepare", "java-start", "java-wait", "java-agent"));
        Map<String, Step> ended = new ConcurrentHashMap<>();
        CountDownLatch allEnded = new CountDownLatch(1);
        async.watchSteps(WatchStepsRequest.newBuilder().setDagId(dag).build(), new StreamObserver<WatchStepsResponse>() {
            public void onNext(WatchStepsResponse r) {
                Step s = r.getStep();
                if (s.getState() != StepState.STEP_STATE_PENDING && s.getState() != StepState.STEP_STATE_RUNNING) {
                    ended.put(s.getId(), s);
                    if (ended.keySet().containsAll(ids)) {
                        allEnded.countDown();
                    }
                }
            }
            public void onError(Throwable t) { }
            public void onCompleted() { }
        });

        ObserverSpec spec = ObserverSpec.newBuilder()
            .setHomePath(home)
            .setBinary(System.getenv("OBHOST_FAKE_OBSERVER"))
            .setMysqlPort(mysqlPort).setRpcPort(mysqlPort + 1)
            .setZone("zone1").setClusterName("obtest").setClusterId(1)
            .build();
        agent.prepare(PrepareRequest.newBuilder().setMeta(meta("java-prepare", dag)).setObserver(spec)
            .setCreateDirs(true).addAllSkipChecks(List.of("memory.available", "memory.limit", "disk.data", "disk.redo")).build());
        waitFor(agent, "java-prepare");
        StartObserverRequest start = StartObserverRequest.newBuilder()
            .setMeta(meta("java-start", dag)).setObserver(spec).build();
        Step first = agent.startObserver(start).getStep();
        waitFor(agent, "java-start");
        // Replay: the same id and parameters give the same step, nothing new.
        Step again = agent.startObserver(start).getStep();
        check(again.getId().equals(first.getId()) && again.getCreatedAt().equals(first.getCreatedAt()),
            "a replayed step id made a new step: " + again);
        agent.waitObserverActive(WaitObserverActiveRequest.newBuilder().setMeta(meta("java-wait", dag))
            .setHomePath(home).setMysqlPort(mysqlPort).build());
        waitFor(agent, "java-wait");
        agent.startAgentService(StartAgentServiceRequest.newBuilder().setMeta(meta("java-agent", dag))
            .setCommand(ServiceCommand.newBuilder()
                .addAllArgv(List.of("/usr/bin/python3", "-m", "http.server", String.valueOf(agentPort), "--bind", "127.0.0.1"))
                .setCwd(home).setForeground(true))
            .setHealth(HealthCheck.newBuilder().setTcpPort(agentPort))
            .build());
        check(allEnded.await(60, TimeUnit.SECONDS), "WatchSteps did not see every step end: " + ended.keySet());
        for (String id : ids) {
            check(ended.get(id).getState() == StepState.STEP_STATE_SUCCEEDED, id + " ended " + ended.get(id));
        }
        System.out.println("agent pid " + ended.get("java-agent").getOutputsMap().get("pid"));

        // A bad request is refused with a message saying what is wrong.
        try {
            agent.startObserver(StartObserverRequest.newBuilder().setMeta(meta("java-bad", dag))
                .setObserver(ObserverSpec.newBuilder().setHomePath("relative/home")).build());
            check(false, "a relative home_path was accepted");
        } catch (StatusRuntimeException e) {
            check(e.getStatus().getCode() == Status.Code.INVALID_ARGUMENT, "refused as " + e.getStatus());
            check(e.getStatus().getDescription().contains("home_path"), "message: " + e.getStatus().getDescription());
            System.out.println("refused: " + e.getStatus().getDescription());
        }
        channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
        System.out.println("java tcp: all checks passed");
    }

    static void waitFor(HostAgentGrpc.HostAgentBlockingStub agent, String id) throws InterruptedException {
        long end = System.currentTimeMillis() + 60_000;
        while (System.currentTimeMillis() < end) {
            Step s = agent.getStep(GetStepRequest.newBuilder().setStepId(id).build()).getStep();
            if (s.getState() == StepState.STEP_STATE_SUCCEEDED) {
                return;
            }
            check(s.getState() == StepState.STEP_STATE_PENDING || s.getState() == StepState.STEP_STATE_RUNNING,
                id + " ended " + s);
            Thread.sleep(20);
        }
        throw new AssertionError(id + " never ended");
    }

    static void sink(int port) throws Exception {
        Server server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", port))
            .addService(new StepReporterGrpc.StepReporterImplBase() {
                @Override
                public void reportSteps(ReportStepsRequest r, StreamObserver<ReportStepsResponse> out) {
                    for (Step s : r.getStepsList()) {
                        System.out.println("{\"agent_id\":\"" + r.getAgentId() + "\",\"id\":\"" + s.getId()
                            + "\",\"revision\":" + s.getRevision() + ",\"state\":\"" + s.getState()
                            + "\",\"after_revision\":" + r.getAfterRevision() + "}");
                    }
                    System.out.flush();
                    out.onNext(ReportStepsResponse.getDefaultInstance());
                    out.onCompleted();
                }
            })
            .build().start();
        System.out.println("{\"listening\":" + port + "}");
        System.out.flush();
        server.awaitTermination();
    }

    static void unix(String socket) throws Exception {
        Class<?> epoll = Class.forName("io.netty.channel.epoll.Epoll");
        boolean available = (Boolean) epoll.getMethod("isAvailable").invoke(null);
        if (!available) {
            Throwable why = (Throwable) epoll.getMethod("unavailabilityCause").invoke(null);
            System.out.println("SKIPPED: netty's native epoll transport, which grpc-netty needs for a Unix socket, is not available: " + why);
            return;
        }
        Class<?> group = Class.forName("io.netty.channel.epoll.EpollEventLoopGroup");
        Class<?> chan = Class.forName("io.netty.channel.epoll.EpollDomainSocketChannel");
        Class<?> addr = Class.forName("io.netty.channel.unix.DomainSocketAddress");
        ManagedChannel channel = NettyChannelBuilder
            .forAddress((java.net.SocketAddress) addr.getConstructor(String.class).newInstance(socket))
            .eventLoopGroup((io.netty.channel.EventLoopGroup) group.getConstructor().newInstance())
            .channelType((Class<? extends io.netty.channel.Channel>) chan)
            .usePlaintext().build();
        HostInfo host = HostAgentGrpc.newBlockingStub(channel).getHostInfo(GetHostInfoRequest.getDefaultInstance()).getHost();
        check(host.getCpus() > 0, "host: " + host);
        System.out.println("java unix: all checks passed");
    }
}
