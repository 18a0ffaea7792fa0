-- A port belongs to one service and one role: the UNIQUE columns alone would let a new service's
-- cluster port equal another service's pooler port.
CREATE TRIGGER services_ports_distinct BEFORE INSERT ON services
WHEN NEW.pg_port = NEW.pooler_port
  OR EXISTS (SELECT 1 FROM services
             WHERE pg_port IN (NEW.pg_port, NEW.pooler_port)
                OR pooler_port IN (NEW.pg_port, NEW.pooler_port))
BEGIN
    SELECT RAISE(ABORT, 'port already allocated to a service');
END;
